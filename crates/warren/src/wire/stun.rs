//! STUN (RFC 8489) binding requests and responses, the one exchange a node and its relay need
//! to tell how the node's NAT maps ports: the relay's second UDP port answers a binding request
//! with the address it came from (XOR-MAPPED-ADDRESS), and the node compares it with the
//! address the relay's main port saw (see [`crate::state::nat`]). Messages over
//! [`MAX_MESSAGE`] bytes are refused; attributes other than the mapped address are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// STUN's magic cookie (bytes 4..8 of every message).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The longest message read.
pub const MAX_MESSAGE: usize = 548;
const HEADER: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const MAPPED_ADDRESS: u16 = 0x0001;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Whether `datagram` looks like STUN (first two bits zero, the magic cookie): told apart from
/// QUIC (fixed bit set) and warren frames (`00 'W' 'R'`) on the same socket.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER
        && datagram[0] & 0xc0 == 0
        && u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]) == MAGIC_COOKIE
}

/// A binding request with transaction id `tid`.
pub fn binding_request(tid: [u8; 12]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..].copy_from_slice(&tid);
    out
}

/// If `datagram` is a binding request, the answer telling its sender `from` where it came from.
pub fn answer(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(datagram)
        || datagram.len() > MAX_MESSAGE
        || u16::from_be_bytes([datagram[0], datagram[1]]) != BINDING_REQUEST
    {
        return None;
    }
    let tid: [u8; 12] = datagram[8..20].try_into().expect("12 bytes");
    let (family, ip): (u8, Vec<u8>) = match from.ip() {
        IpAddr::V4(ip) => (1, xor(&ip.octets(), &tid)),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => (1, xor(&ip.octets(), &tid)),
            None => (2, xor(&ip.octets(), &tid)),
        },
    };
    let value_len = 4 + ip.len();
    let mut out = Vec::with_capacity(HEADER + 4 + value_len);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value_len) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&tid);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&(from.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    out.extend_from_slice(&ip);
    Some(out)
}

/// XORs an address with the cookie (and, for IPv6, the transaction id).
fn xor(octets: &[u8], tid: &[u8; 12]) -> Vec<u8> {
    let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
    key.extend_from_slice(tid);
    octets.iter().zip(key).map(|(a, k)| a ^ k).collect()
}

/// Why a response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Not a STUN message, or over [`MAX_MESSAGE`].
    #[error("not a STUN message")]
    NotStun,
    /// Another message type than a binding success.
    #[error("not a binding success response")]
    NotSuccess,
    /// Its length field disagrees with the datagram, or an attribute runs past the end.
    #[error("malformed STUN message")]
    Malformed,
    /// No (XOR-)MAPPED-ADDRESS in it.
    #[error("no mapped address in the STUN response")]
    NoAddress,
}

/// A binding success response: its transaction id and the mapped address (XOR-MAPPED-ADDRESS,
/// else MAPPED-ADDRESS).
pub fn parse_response(datagram: &[u8]) -> Result<([u8; 12], SocketAddr), StunError> {
    if !is_stun(datagram) || datagram.len() > MAX_MESSAGE {
        return Err(StunError::NotStun);
    }
    if u16::from_be_bytes([datagram[0], datagram[1]]) != BINDING_SUCCESS {
        return Err(StunError::NotSuccess);
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if HEADER + len != datagram.len() || len % 4 != 0 {
        return Err(StunError::Malformed);
    }
    let tid: [u8; 12] = datagram[8..20].try_into().expect("12 bytes");
    let mut at = HEADER;
    let mut plain = None;
    while at + 4 <= datagram.len() {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let value_len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value = datagram.get(at + 4..at + 4 + value_len).ok_or(StunError::Malformed)?;
        match kind {
            XOR_MAPPED_ADDRESS => return address(value, Some(&tid)).map(|a| (tid, a)),
            MAPPED_ADDRESS => plain = Some(address(value, None)?),
            _ => {}
        }
        at += 4 + value_len.div_ceil(4) * 4;
    }
    plain.map(|a| (tid, a)).ok_or(StunError::NoAddress)
}

/// An address attribute's value, un-XORed with `tid` for XOR-MAPPED-ADDRESS.
fn address(value: &[u8], tid: Option<&[u8; 12]>) -> Result<SocketAddr, StunError> {
    let (family, port) = match value {
        [_, family, hi, lo, ..] => (*family, u16::from_be_bytes([*hi, *lo])),
        _ => return Err(StunError::Malformed),
    };
    let port = if tid.is_some() { port ^ (MAGIC_COOKIE >> 16) as u16 } else { port };
    let ip = match (family, &value[4..]) {
        (1, ip) if ip.len() == 4 => ip.to_vec(),
        (2, ip) if ip.len() == 16 => ip.to_vec(),
        _ => return Err(StunError::Malformed),
    };
    let ip = match tid {
        Some(tid) => xor(&ip, tid),
        None => ip,
    };
    Ok(match ip.len() {
        4 => SocketAddr::new(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into(), port),
        _ => SocketAddr::new(Ipv6Addr::from(<[u8; 16]>::try_from(ip).expect("16 bytes")).into(), port),
    })
}

/// Fuzzing: arbitrary bytes as a response, and as a request to answer. Never panics; an
/// answer parses back to the address it names.
pub fn fuzz_stun(data: &[u8]) {
    let _ = parse_response(data);
    let from: SocketAddr = "203.0.113.7:40000".parse().expect("an address");
    if let Some(answer) = answer(data, from) {
        assert_eq!(parse_response(&answer).map(|(_, a)| a), Ok(from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_with_where_it_came_from() {
        let request = binding_request([5; 12]);
        assert!(is_stun(&request));
        for from in ["198.51.100.20:61000", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:9"] {
            let from: SocketAddr = from.parse().unwrap();
            let answer = answer(&request, from).unwrap();
            let expected = match from {
                SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
                    SocketAddr::new(v6.ip().to_ipv4_mapped().unwrap().into(), v6.port())
                }
                other => other,
            };
            assert_eq!(parse_response(&answer), Ok(([5; 12], expected)));
        }
        // Not answered: a response, junk, QUIC, a warren frame.
        let response = answer(&request, "1.2.3.4:5".parse().unwrap()).unwrap();
        assert_eq!(super::answer(&response, "1.2.3.4:5".parse().unwrap()), None);
        assert_eq!(super::answer(&[0xc0; 40], "1.2.3.4:5".parse().unwrap()), None);
        assert!(!is_stun(b"\x00WR\x04 and the rest of a frame"));
    }

    #[test]
    fn an_rfc_5769_style_response_with_other_attributes_parses() {
        // SOFTWARE, then XOR-MAPPED-ADDRESS for 192.0.2.1:32853 (RFC 5769 §2.2's address).
        let tid = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];
        let mut m = vec![0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&tid);
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x0b]);
        m.extend_from_slice(b"test vector\x20");
        m.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse_response(&m), Ok((tid, "192.0.2.1:32853".parse().unwrap())));
    }

    #[test]
    fn hostile_responses_are_refused() {
        let good = answer(&binding_request([1; 12]), "1.2.3.4:5".parse().unwrap()).unwrap();
        let mut long_len = good.clone();
        long_len[3] += 4;
        assert_eq!(parse_response(&long_len), Err(StunError::Malformed));
        let mut attr_past_end = good.clone();
        attr_past_end[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse_response(&attr_past_end), Err(StunError::Malformed));
        let mut bad_family = good.clone();
        bad_family[25] = 9;
        assert_eq!(parse_response(&bad_family), Err(StunError::Malformed));
        let mut no_attr = good[..20].to_vec();
        no_attr[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(parse_response(&no_attr), Err(StunError::NoAddress));
        assert_eq!(parse_response(&[0u8; 1000]), Err(StunError::NotStun));
        for len in 0..64 {
            fuzz_stun(&good[..len.min(good.len())]);
            fuzz_stun(&vec![0x01; len]);
        }
    }
}
